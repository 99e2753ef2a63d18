import os
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]

if os.environ.get("TQ_TEST_INSTALLED") == "1":
    # `make test-python`: test the wheel installed into the venv, with its bundled library.
    import turboquant

    where = Path(turboquant.__file__).resolve().parent
    assert CHECKOUT not in where.parents, f"TQ_TEST_INSTALLED=1 but turboquant comes from {where}"
    assert (where / "libturboquant.so").is_file(), f"no bundled libturboquant.so in {where}"
else:
    # Test the package in this checkout (not an installed copy); TURBOQUANT_LIB or target/release.
    sys.path.insert(0, str(CHECKOUT))
