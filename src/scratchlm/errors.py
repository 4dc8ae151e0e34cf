class ScratchError(Exception):
    """Bad input from the user: the CLI prints it as one line, without a traceback."""


def one_line(err: BaseException, last: bool = False) -> str:
    """One line of another library's error, for a ScratchError's message: its first non-empty line, or its
    last with `last` (where validation errors and torch.distributed's gathered failures put the cause);
    300 characters at most; the error's type when its message is empty."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    return (lines[-1] if last else lines[0])[:300]
