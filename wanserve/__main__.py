from wanserve.cli.main import app

app()
