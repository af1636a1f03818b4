"""The notebook side of nb_trainer: the panel, its live figure and the renderer process.

Nothing here is imported by the layers below (config, data, engine, session ...).
"""
