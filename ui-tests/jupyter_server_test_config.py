"""Jupyter server for the browser tests (started by playwright.config.js's webServer; never use it elsewhere).

Galata's test configuration (token and XSRF checks off for the browser only: the Python server tests check auth),
a fresh root directory and a fresh nb_finetune run index per server, so the tests never see the user's runs.
"""

import os
import tempfile
from pathlib import Path

from jupyterlab.galata import configure_jupyter_server

REPO = Path(__file__).resolve().parent.parent

root = os.environ.get("JUPYTERLAB_GALATA_ROOT_DIR") or tempfile.mkdtemp(prefix="nbf-ui-root-")
os.environ["JUPYTERLAB_GALATA_ROOT_DIR"] = root
# kernels inherit the server's environment: the run index, the repo (for tests.conftest's tiny model builder)
os.environ.setdefault("NB_FINETUNE_INDEX_DIR", tempfile.mkdtemp(prefix="nbf-ui-index-"))
os.environ["NBF_REPO_ROOT"] = str(REPO)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

configure_jupyter_server(c)  # noqa: F821

c.ServerApp.port = int(os.environ.get("NBF_UI_PORT", "18888"))  # noqa: F821
c.ServerApp.jpserver_extensions.update({"nb_finetune": True})  # noqa: F821
c.LabApp.news_url = None  # noqa: F821
c.LabApp.check_for_updates_class = "jupyterlab.NeverCheckForUpdate"  # noqa: F821
c.ServerApp.allow_root = True  # noqa: F821  (CI and these machines run as root)
c.JupyterNotebookApp.expose_app_in_browser = True  # noqa: F821  (Notebook 7 pages for Galata)
