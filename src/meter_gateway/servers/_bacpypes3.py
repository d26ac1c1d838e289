"""bacpypes3, imported without its optional RDF module.

bacpypes3's package imports `bacpypes3.rdf`, and with it rdflib (about 18 MiB of memory and 0.3 s), whenever rdflib
is installed, as it is with the gateway's `models` extra (the Brick model, which imports rdflib itself when asked).
The gateway never uses bacpypes3's RDF module: while bacpypes3 is first imported, rdflib is made unimportable, and
afterwards importable again. Imported first by servers/bacnet.py; a no-op when bacpypes3 or rdflib is already in.
"""

from __future__ import annotations

import sys

_BLOCK = "bacpypes3" not in sys.modules and "rdflib" not in sys.modules
if _BLOCK:
    sys.modules["rdflib"] = None  # type: ignore[assignment]  # `import rdflib` raises ImportError meanwhile
try:
    import bacpypes3  # noqa: F401
finally:
    if _BLOCK and "rdflib" in sys.modules and sys.modules["rdflib"] is None:
        del sys.modules["rdflib"]
