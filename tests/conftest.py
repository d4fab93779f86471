"""Options shared by the whole test suite (pytest reads ``pytest_addoption`` only from here, the
tests' root directory)."""


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite golden files from the current output instead of comparing with them")
