"""The in-container program (standard library only) and the wire format both sides share."""
