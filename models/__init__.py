"""The model catalog (catalog.json), shipped as the package data of pyllama.models_data; pyllama/models.py reads it."""
