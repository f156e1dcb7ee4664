"""Files in and out: CT volumes in canonical orientation, model files, atomic writes, progress events."""
