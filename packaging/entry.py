"""The frozen executable's entry point (PyInstaller runs this file as __main__)."""

import multiprocessing

from speccyd.cli import main

if __name__ == "__main__":
    # A no-op unless frozen; there, a child started by multiprocessing must not run the CLI again.
    multiprocessing.freeze_support()
    main()
