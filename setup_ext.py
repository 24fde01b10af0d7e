"""Native rasterizer extension build (filled in by the native-backend work, issue 3)."""


def native_extensions():
    """Return (cmdclass, ext_modules) for setup(); empty until the native backend exists."""
    return {}, []
