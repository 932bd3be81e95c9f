"""Entry point for ``python app.py`` and Hugging Face Spaces: read settings, build the app, launch.

Besides launching, it bounds what a public server must: Gradio's upload cache goes to a folder of ours
(``GRADIO_TEMP_DIR``, set before Gradio is imported) that a housekeeping thread keeps under the disk budget
(``serdemo.housekeeping``); logins (``SERDEMO_AUTH``) go through a guard that slows and locks out wrong
passwords; a refused file path in a request is logged in one line, not a traceback; every chunk a live
microphone streams is recorded on its way in (Gradio itself keeps only the latest one while a handler runs);
request bodies outside uploads are bounded, uploads checked against the disk budget as they arrive, one
caller's share of the queue capped and the queue served round-robin by client address (``serdemo.uikit``,
``serdemo.housekeeping``); page sessions are made cheap, capped and forgotten when idle
(``serdemo.housekeeping.SessionKeeper``).
"""

import os
import tempfile
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_TEMP_DIR", str(Path(tempfile.gettempdir()) / "serdemo-gradio"))

from serdemo.housekeeping import (SessionKeeper, Sweeper, UploadBudget, UploadBudgetMiddleware,  # noqa: E402
                                  UploadsInUse, gradio_cache_dir, lean_session_state, limit_malloc_arenas,
                                  max_page_sessions, upload_bytes)
from serdemo.ui import build_app  # noqa: E402
from serdemo.uikit import (CSS, SHORTCUTS_JS, BodyLimitMiddleware, LoginClientMiddleware, LoginGuard,  # noqa: E402
                           QueueLimitMiddleware, StreamChunkMiddleware, configure_proxy_headers, fair_queue,
                           quiet_refused_paths)
from serdemo.workbench import Settings  # noqa: E402


def main() -> None:
    limit_malloc_arenas()  # two malloc arenas: memory freed after a burst can go back to the system
    settings = Settings.from_env()
    app = build_app(settings)
    app.queue(default_concurrency_limit=int(os.environ.get("SERDEMO_CONCURRENCY", "2")))
    quiet_refused_paths()
    gradio_cache_dir().mkdir(parents=True, exist_ok=True)
    bench = getattr(app, "workbench", None)
    lean_session_state()  # a session no longer copies every component's config (~250 kB each)
    # a file that a waiting or running event references is never swept, and its age counts from that use
    in_use = UploadsInUse(app)
    Sweeper(every_s=float(os.environ.get("SERDEMO_SWEEP_S", "60")),
            retrainer=getattr(bench, "retrainer", None), sessions=SessionKeeper(app), in_use=in_use).start()
    # SERDEMO_AUTH="alice:secret,bob:other" (a Space secret): a login page; the login name is the annotator
    guard = LoginGuard.from_env(os.environ.get("SERDEMO_AUTH", ""))
    # the login guard counts wrong passwords per client address too; on a Space the proxy's
    # X-Forwarded-For entry is the client (SERDEMO_TRUST_PROXY=1 elsewhere behind a proxy that appends it);
    # otherwise the header is trusted from nobody, not even 127.0.0.1 (uvicorn's default)
    from starlette.middleware import Middleware
    trust = configure_proxy_headers()
    fair_queue(app, trust_forwarded=trust)  # one client's flood waits its turns among the others' events
    max_upload = os.environ.get("SERDEMO_MAX_UPLOAD", "50mb")
    app.launch(
        auth=guard.check if guard else None,
        # outermost first: bodies bounded, uploads checked against the disk budget, the queue's share per caller,
        # the client's address for the login guard, and every live-microphone chunk recorded before Gradio
        # replaces a waiting one with the next
        app_kwargs={"middleware": [Middleware(BodyLimitMiddleware),
                                   Middleware(UploadBudgetMiddleware, max_upload=upload_bytes(max_upload),
                                              budget=UploadBudget(in_use=in_use),
                                              trust_forwarded=trust),
                                   Middleware(QueueLimitMiddleware, trust_forwarded=trust,
                                              per_session=int(os.environ.get("SERDEMO_QUEUE_PER_SESSION", "16")),
                                              per_client=int(os.environ.get("SERDEMO_QUEUE_PER_CLIENT", "48"))),
                                   Middleware(LoginClientMiddleware, trust_forwarded=trust),
                                   Middleware(StreamChunkMiddleware)]},
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", os.environ.get("PORT", "7860"))),
        max_file_size=max_upload,
        state_session_capacity=max_page_sessions(),
        head=SHORTCUTS_JS,
        css=CSS,
        footer_links=["api"],
    )


if __name__ == "__main__":
    main()
