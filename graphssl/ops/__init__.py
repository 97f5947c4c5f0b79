"""Pure tensor functions shared by components (patchify, position tables)."""
