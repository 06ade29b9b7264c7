"""User errors: the one exception type for bad input, and one-line reasons for refused files."""


class IntradaError(Exception):
    """A bad parameter or input file. Stages print its message as one line and exit 1.

    The message must name the parameter or file and say what was expected.
    """


# Lines of torch's weights_only refusal that are advice, not the reason.
TORCH_ADVICE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def load_failure(exc: Exception) -> str:
    """One line of why torch.load failed: weights_only loading (which never runs code
    stored in a file) explains a refusal in several lines, mostly advice to turn it off."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reasons = [line for line in lines if not line.startswith(TORCH_ADVICE)]
    return (reasons or lines or [type(exc).__name__])[0]
