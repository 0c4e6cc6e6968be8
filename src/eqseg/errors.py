"""One exception type for every user-facing failure: the CLI prints its message as one line and exits non-zero."""


class EqsegError(Exception):
    """A bad input or configuration, described in one line that names the file or key at fault."""
