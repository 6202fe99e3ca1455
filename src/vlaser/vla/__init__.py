"""Vlaser-VLA: a flow-matching action expert joined to the Vlaser/InternVL3 backbone (issue 19)."""
