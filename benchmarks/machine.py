"""What every benchmark prints about the machine it ran on."""
import os
import platform


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages, as /proc/loadavg gives them."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def machine_line() -> str:
    """One comment line: CPU count and model, Python version."""
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"# machine: {os.cpu_count()} CPUs, {model}, Python {platform.python_version()} "
            f"({platform.python_implementation()})")
