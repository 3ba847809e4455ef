from collections.abc import Sequence

MAX_LIMIT: int

def read_files(dirfd: int, names: Sequence[str | bytes], limit: int) -> list[bytes | int]: ...
