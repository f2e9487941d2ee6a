"""The generation engine: load a Wan model, run one request, return frames (torch lives here and below)."""


def quiet_libraries() -> None:
    """diffusers / transformers print progress bars and experimental-API notices on every load:
    noise in a service log. Our own progress reporting replaces them."""
    import warnings

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*CLIPImageProcessor.*torchvision.*")
