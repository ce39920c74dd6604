"""Weights that ship with the package (see README.md in this folder for their origin and licences)."""
