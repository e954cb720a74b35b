"""Policies: the user-facing policy format, its typed model, and the loader that validates it."""

from waypost.policies.diagnostics import Diagnostic, PolicyError
from waypost.policies.loader import load_policies
from waypost.policies.model import PolicySet

__all__ = ["Diagnostic", "PolicyError", "PolicySet", "load_policies"]
