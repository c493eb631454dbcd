"""What the trust-boundary tests plant in a work folder."""


class Planted:
    """What an attacker writes as tuner.pkl: unpickling it creates a marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))
