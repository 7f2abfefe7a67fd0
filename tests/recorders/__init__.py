"""Scripts that record other engines' outputs (llama.cpp, transformers) into tests/data/.

Each is run by hand (`python tests/recorders/record_NAME.py --help`) when a reference has to be
recorded again; the tests only read the JSON files they wrote. Some tests import a recorder for
what both must agree on (which models, how a derived vocabulary is built).
"""
