"""``attnlens dashboard ROOT``: the Streamlit page over a folder of runs (``docs/dashboard.md``)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from ..errors import BadOption, NotFoundError
from ._app import app
from ._output import err_console

DASHBOARD_EXAMPLES = """
Examples:

  attnlens dashboard runs/

  attnlens dashboard runs/ --port 8600

  attnlens dashboard runs/ --host 0.0.0.0      # reachable from other machines: anyone who can connect sees ROOT

The page binds to 127.0.0.1 unless --host says otherwise, and only runs under ROOT can be opened. The view (prompt,
seed, methods, tokens, step, layer, ...) is kept in the URL: copy it to share or reopen a view.
"""

APP_ENV = "ATTNLENS_DASHBOARD_APP"
ROOT_ENV = "ATTNLENS_DASHBOARD_ROOT"


def find_app() -> Path:
    """The Streamlit script: ``$ATTNLENS_DASHBOARD_APP`` when it names a file, else the ``app.py`` of the installed
    ``dashboard`` package (shipped in the wheel next to ``attnlens``; in a checkout, the source tree's)."""
    env = os.environ.get(APP_ENV)
    if env:
        if Path(env).is_file():
            return Path(env).resolve()
        err_console.print(f"warning: ${APP_ENV}={env} is not a file; using the installed dashboard", markup=False)
    try:
        import dashboard  # optional at the CLI edge: every other command works without it
    except ImportError:
        dashboard = None
    app_path = getattr(dashboard, "APP", None)
    if app_path is not None and Path(app_path).is_file():
        return Path(app_path).resolve()
    sibling = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"  # a checkout not (re)installed yet
    if dashboard is None and sibling.is_file():
        return sibling
    if dashboard is None:
        raise NotFoundError("the dashboard package is not installed next to attnlens",
                            hint=f"reinstall attnlens (pip install attnlens, or pip install -e . in a checkout), "
                                 f"or set {APP_ENV} to dashboard/app.py")
    where = getattr(dashboard, "__file__", None) or "a namespace package"
    raise NotFoundError(f"the 'dashboard' package found ({where}) is not attnlens's dashboard: it has no app.py",
                        hint=f"another package named 'dashboard' shadows it: uninstall that one, "
                             f"or set {APP_ENV} to attnlens's dashboard/app.py")


def _on_path(folder: Path) -> bool:
    """Whether ``folder`` is on ``sys.path`` (compared with symlinks resolved, e.g. a venv's ``lib64``)."""
    import sys

    target = os.path.realpath(folder)
    return any(os.path.realpath(p or os.curdir) == target for p in sys.path)


def streamlit_args(app_path: Path, root: Path, host: str, port: int) -> list[str]:
    """The ``streamlit run`` command line (without the leading ``streamlit``). The root reaches the script as an
    argument after ``--`` (never through a shell)."""
    return [
        "run", str(app_path),
        "--server.address", host,
        "--server.port", str(port),
        "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none",
        "--server.runOnSave", "false",
        "--client.toolbarMode", "minimal",
        "--theme.base", "light",
        "--", "--root", str(root),
    ]


def _preload(app_path: Path) -> None:
    """Import what the page needs before the server accepts its first connection (torch, the analysis, plotly), so
    the first page load does not wait for imports. ``app_path``'s ``dashboard`` package is the one imported (the
    script then finds it in ``sys.modules``)."""
    import sys

    holder = str(app_path.parents[1])  # the folder holding that dashboard package
    if not _on_path(Path(holder)):  # $ATTNLENS_DASHBOARD_APP in another checkout (an installed one is on the path)
        sys.path.insert(0, holder)
    import pandas  # noqa: F401
    import PIL.Image  # noqa: F401
    import pyarrow  # noqa: F401
    import zarr  # noqa: F401

    import attnlens.analysis  # noqa: F401
    import attnlens.compare  # noqa: F401
    import attnlens.figures  # noqa: F401
    import plotly.graph_objects  # noqa: F401

    import dashboard.data  # noqa: F401  (not dashboard.ui: its caches must be created inside the server)
    import dashboard.plots  # noqa: F401


@app.command(epilog=DASHBOARD_EXAMPLES)
def dashboard(
    where: str = typer.Argument("runs", metavar="ROOT",
                                help="Folder holding runs (only runs under it can be opened), or a URL "
                                     "(s3://bucket/root: its runs are copied into the local cache first)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (default: this machine only)."),
    port: int = typer.Option(8501, "--port", help="Port to serve on."),
    print_command: bool = typer.Option(False, "--print-command", help="Print the streamlit command and exit."),
) -> None:
    """Open the dashboard: compare methods side by side (images, maps at any step and layer, metric curves, leakage),
    compare across prompts, and export paper figures."""
    from ..store.remote import is_url, mirror_root

    root = mirror_root(where) if is_url(where) else Path(where)
    if not root.exists():
        raise BadOption(f"'{root}' does not exist", hint="pass the folder your runs are recorded in, e.g. runs/")
    if not root.is_dir():
        raise BadOption(f"'{root}' is not a folder", hint="pass the folder holding runs (or one run folder)")
    if not 0 < port < 65536:
        raise BadOption(f"invalid port {port}", hint="choose a port between 1 and 65535, e.g. 8501")
    root = root.resolve()
    app_path = find_app()
    args = streamlit_args(app_path, root, host, port)
    if print_command:
        import shlex

        print(" ".join(shlex.quote(a) for a in ["streamlit", *args]))
        return
    os.environ[ROOT_ENV] = str(root)
    os.environ.setdefault("STREAMLIT_BROWSER_GATHER_USAGE_STATS", "false")
    _preload(app_path)
    shown = "localhost" if host in ("127.0.0.1", "localhost") else host
    err_console.print(f"attnlens dashboard: {root} at http://{shown}:{port} (Ctrl-C to stop)", markup=False)
    if host not in ("127.0.0.1", "localhost", "::1"):
        err_console.print(f"warning: listening on {host}: anyone who can reach this port can browse {root}",
                          markup=False)
    from streamlit.web import cli as stcli

    stcli.main(args=args, prog_name="streamlit", standalone_mode=True)
