"""Streamlit entry point of the attnlens dashboard.

Started by ``attnlens dashboard ROOT`` (which runs ``streamlit run <this file> -- --root ROOT``, from a checkout or
from the installed ``dashboard`` package alike); by hand, in a checkout::

    streamlit run dashboard/app.py --server.address 127.0.0.1 -- --root runs/

The root can also come from ``$ATTNLENS_DASHBOARD_ROOT``. The page itself is :mod:`dashboard.ui`.
"""

import os
import sys
from pathlib import Path

# `streamlit run dashboard/app.py` puts dashboard/ itself on the path, not the folder holding the package: from a
# checkout, put the checkout first (its dashboard wins over an installed one). Installed, that folder is a
# site-packages already on the path, and the path is left as it is.
_HOLDER = str(Path(__file__).resolve().parents[1])
if not any(os.path.realpath(p or os.curdir) == _HOLDER for p in sys.path):
    sys.path.insert(0, _HOLDER)

from dashboard.ui import main  # noqa: E402

main()
