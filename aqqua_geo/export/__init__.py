"""Exports of store objects and predictions to formats of other tools (EcoTaxa)."""
