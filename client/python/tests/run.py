"""Runs one test module for ctest: `python3 run.py test_client`.

Exit code 0 when it passed, 1 when a test failed, 77 (ctest: skipped) when its
requirements are missing: grpc/protobuf/numpy for every module, torch for
test_torch (whose tests then all skip, each saying why).
"""

import sys
import unittest

try:
    import grpc  # noqa: F401
    import google.protobuf  # noqa: F401
    import numpy  # noqa: F401
except ImportError as e:
    print(f"SKIPPED: {e} (install python3-grpcio, python3-protobuf and python3-numpy)")
    sys.exit(77)

suite = unittest.defaultTestLoader.loadTestsFromName(sys.argv[1])
result = unittest.TextTestRunner(verbosity=2).run(suite)
if not result.wasSuccessful():
    sys.exit(1)
if result.testsRun and len(result.skipped) == result.testsRun:
    print(f"SKIPPED: every test of {sys.argv[1]} skipped: {result.skipped[0][1]}")
    sys.exit(77)
