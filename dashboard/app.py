"""Streamlit entry point of the attnlens dashboard.

Started by ``attnlens dashboard ROOT`` (which runs ``streamlit run dashboard/app.py -- --root ROOT``); by hand::

    streamlit run dashboard/app.py --server.address 127.0.0.1 -- --root runs/

The root can also come from ``$ATTNLENS_DASHBOARD_ROOT``. The page itself is :mod:`dashboard.ui`.
"""

import sys
from pathlib import Path

_REPO = str(Path(__file__).resolve().parents[1])
if _REPO not in sys.path:  # `streamlit run` puts dashboard/ on the path, not the folder holding the package
    sys.path.insert(0, _REPO)

from dashboard.ui import main  # noqa: E402

main()
