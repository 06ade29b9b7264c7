"""The one exception type that means "the user gave us something wrong"."""


class IntradaError(Exception):
    """A bad parameter or input file. Stages print its message as one line and exit 1.

    The message must name the parameter or file and say what was expected.
    """
