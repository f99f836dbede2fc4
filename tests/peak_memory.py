"""Peak resident memory of this process on Linux (/proc), for tests and benches that bound a computation's memory.

`reset_peak()` clears the kernel's high-water mark (False where /proc/self/clear_refs is not writable: the caller
then cannot measure a growth and should skip); `peak_bytes()` is VmHWM (ru_maxrss where /proc has no VmHWM)."""
import resource


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
