class ScratchError(Exception):
    """Bad input from the user: the CLI prints it as one line, without a traceback."""
