"""The ``ui`` service's entry point: ``streamlit run`` in this process, after one fix.

Streamlit 1.60 (the last to accept the protobuf 4 that TFX and KServe pin) wraps Starlette's
gzip responders to keep audio and video uncompressed. Under the Starlette we lock (1.10) its
wrapper drops the ``http.response.start`` of every type Starlette itself excludes from
compression (PNG, JPEG, fonts ...), so ``/favicon.png`` was a 500 with a traceback in the log.
Starlette's own list already covers audio and video, so its responders are used unwrapped; the
fix applies only when that holds.
"""

from __future__ import annotations

import sys


def use_starlette_gzip_responders() -> bool:
    """Unwrap Streamlit's media-aware gzip responders -> whether anything was changed."""
    from starlette.middleware import gzip

    try:
        from streamlit.web.server.starlette import starlette_gzip_middleware as streamlit_gzip
    except ImportError:  # a Streamlit without the Starlette server: nothing to fix
        return False
    excluded = getattr(gzip, "DEFAULT_EXCLUDED_CONTENT_TYPES", ())
    if not {"audio/*", "video/*"} <= set(excluded):
        return False  # an older Starlette: Streamlit's wrapper is what keeps media uncompressed
    streamlit_gzip._MediaAwareGZipResponder.send_with_compression = gzip.GZipResponder.send_with_compression
    streamlit_gzip._MediaAwareIdentityResponder.send_with_compression = (
        gzip.IdentityResponder.send_with_compression)
    return True


def main(argv: list[str] | None = None) -> int:
    """``python -m taxi_mlops.ui.serve APP [streamlit run options]``."""
    from streamlit.web import cli

    use_starlette_gzip_responders()
    args = list(sys.argv[1:] if argv is None else argv)
    return cli.main(["run", *args], prog_name="streamlit", standalone_mode=True)


if __name__ == "__main__":
    sys.exit(main())
