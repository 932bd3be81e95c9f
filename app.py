"""Entry point for ``python app.py`` and Hugging Face Spaces: read settings, build the app, launch."""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from serdemo.ui import build_app  # noqa: E402
from serdemo.uikit import CSS, SHORTCUTS_JS  # noqa: E402
from serdemo.workbench import Settings  # noqa: E402


def main() -> None:
    settings = Settings.from_env()
    app = build_app(settings)
    app.queue(default_concurrency_limit=int(os.environ.get("SERDEMO_CONCURRENCY", "2")))
    # SERDEMO_AUTH="alice:secret,bob:other" (a Space secret): a login page; the login name is the annotator
    logins = [tuple(pair.split(":", 1)) for pair in os.environ.get("SERDEMO_AUTH", "").split(",") if ":" in pair]
    app.launch(
        auth=logins or None,
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", os.environ.get("PORT", "7860"))),
        max_file_size=os.environ.get("SERDEMO_MAX_UPLOAD", "50mb"),
        head=SHORTCUTS_JS,
        css=CSS,
        footer_links=["api"],
    )


if __name__ == "__main__":
    main()
