"""Reading the device scripts' logs: every JSON line a step printed, merged into one record."""
import json
import os


def merged(path):
    """The JSON objects on the lines of `path` (a step's log), merged; {} when it is missing."""
    out = {}
    if os.path.exists(path):
        with open(path, errors="replace") as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    try:
                        out.update(json.loads(line))
                    except ValueError:
                        pass
    return out
