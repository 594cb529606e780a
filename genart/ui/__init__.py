"""The web demo: a Streamlit page (``genart/ui/app.py``) that is a client of the HTTP API and nothing else.

It never loads a model, so what a person sees is exactly what the API answered. ``streamlit_command`` is
how ``genart ui`` (and the browser test) start it.
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["PAGE", "streamlit_command"]

PAGE = Path(__file__).with_name("app.py")


def streamlit_command(port: int = 8501, host: str = "127.0.0.1") -> list[str]:
    """``streamlit run`` of the page, headless and without usage statistics; the API comes from the env
    (``GENART_API_URL``, ``GENART_API_KEY``)."""
    return [
        sys.executable, "-m", "streamlit", "run", str(PAGE),
        "--server.port", str(port),
        "--server.address", host,
        "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
        "--theme.base", "light",
        "--theme.primaryColor", "#0f766e",
    ]  # fmt: skip
