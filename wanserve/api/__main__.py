"""`python -m wanserve.api`: the HTTP API alone (workers run elsewhere: `wanserve worker`)."""

import sys

from wanserve.api.server import run_api
from wanserve.settings import SettingsError, load_settings

try:
    settings = load_settings()
except SettingsError as e:
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(2) from None
raise SystemExit(run_api(settings))
