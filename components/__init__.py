"""graphssl's built-in component library, imported as ``graphssl.components``.

Every module below registers its components on import; the registry imports
them all. One small file per part.
"""
