"""Copies to destinations beyond mounted folders: SFTP, S3 and SMB (docs/design.md#remote-destinations).

``urls`` reads and checks what the configuration says; ``delivery`` makes the copies, with a pool
of connections per remote. The protocols' libraries are imported only when a copy is made.
"""


class Problem(Exception):
    """A remote could not take a copy: unreachable, credentials refused, full or read-only. A
    place problem: the delivery waits and is tried again. str() is one line naming the cause."""
