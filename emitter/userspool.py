"""Per-owner spools: where hook runs that are not root journal, and how the
agent knows who wrote them.

TaskProlog/TaskEpilog and SrunProlog/SrunEpilog run as the job's user,
PrologSlurmctld/EpilogSlurmctld as SlurmUser.  None of them may write root's
journal, and none may write another user's records.  So a non-root run
journals to ``<journal_dir>.users/<uid>/`` (contract.USER_SPOOLS_SUFFIX), a
sibling of root's journal, which stays root 0700 (not even traversable):

- ``<journal_dir>.users/`` is root-owned, mode 1733 (contract.USER_SPOOLS_MODE;
  sticky, not listable).  The agent (root) creates it at start; anyone may
  create an entry in it, nobody may rename or delete another's entry.
- ``<journal_dir>.users/<uid>/`` is created by the runner on its first run as that uid,
  mode 0700, owned by the uid.  It has its own ``chain.head``: one hash
  chain per uid.

The agent ships a per-uid spool only when the directory is a real directory
(not a symlink) named by its owner's uid with no group/other access, and
only its files owned by that uid; their records go out marked with that uid
(contract.A_ATTESTED_UID), which the agent takes from its own stat(), never
from the records.  A user can therefore forge only records attested by their
own uid (docs/security.md "Non-root hook contexts").

Runner side: stdlib only, never raises (a spool that cannot be used loses the
records with one stderr line, the script's status is unchanged).
"""

import os
import stat

from emitter import contract as c


def spool_for(journal_dir, euid=None):
    """(directory, problem) where a run as ``euid`` journals.

    Root: ``journal_dir`` itself.  A non-root run whose ``journal_dir`` is its
    own (a personal or test setup) or does not exist keeps it, as before.
    Otherwise ``<journal_dir>.users/<euid>``, created 0700 on first use.
    ``problem`` (str or None) says why that directory must not be written:
    the caller loses the records with that reason rather than write where
    another user could read or alter them.
    """
    euid = os.geteuid() if euid is None else euid
    if euid == 0:
        return journal_dir, None
    try:
        if os.stat(journal_dir).st_uid == euid:
            return journal_dir, None
    except OSError:
        return journal_dir, None
    parent = users_dir(journal_dir)
    path = os.path.join(parent, str(euid))
    try:
        pst = os.lstat(parent)
    except OSError as exc:
        return path, (f"{parent} is missing ({exc.strerror}): start `hookscope agent` as root once, "
                      f"which creates it root-owned with mode {c.USER_SPOOLS_MODE:o}")
    why = parent_problem(pst)
    if why:
        return path, f"{parent} {why}"
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        return path, f"cannot create {path} ({exc.strerror})"
    try:
        st = os.lstat(path)
        if st.st_uid == euid and stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(path, 0o700)  # ours, but a umask or an admin widened it
            st = os.lstat(path)
    except OSError as exc:
        return path, f"cannot check {path} ({exc.strerror})"
    why = spool_problem(str(euid), st)
    return path, (f"{path} {why}; remove it (root) so the next run re-creates it" if why else None)


def users_dir(journal_dir):
    """``<journal_dir>.users``: the parent of the per-uid spools."""
    return os.path.normpath(str(journal_dir)) + c.USER_SPOOLS_SUFFIX


def parent_problem(st, root_uid=0):
    """Why the parent of the per-uid spools with these lstat() results is unsafe, or None.  Pure.

    It must be a root-owned directory; if others may write it, only with
    the sticky bit (so nobody renames or deletes another user's spool)."""
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory (a symlink?)"
    if st.st_uid != root_uid:
        return f"is owned by uid {st.st_uid}, not root"
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022 and not mode & stat.S_ISVTX:
        return f"has mode {mode:04o}: writable by others without the sticky bit"
    return None


def spool_problem(name, st):
    """Why the per-uid spool ``<journal_dir>.users/<name>`` with these lstat() results must
    not be trusted, or None.  Pure."""
    if stat.S_ISLNK(st.st_mode):
        return "is a symlink"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if name != str(st.st_uid):
        return f"is owned by uid {st.st_uid}, not uid {name}"
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        return f"has mode {mode:04o} (group/others have access; it must be 0700)"
    return None


# ---------------------------------------------------------------- agent side (root)
def ensure_parent(journal_dir):
    """Create ``<journal_dir>.users`` root-owned, mode 1733, or check it.
    Returns None when it is usable, else what is wrong (for the log)."""
    parent = users_dir(journal_dir)
    try:
        os.mkdir(parent, 0o700)
        os.chmod(parent, c.USER_SPOOLS_MODE)  # mkdir's mode goes through the umask
    except FileExistsError:
        pass
    except OSError as exc:
        return f"cannot create {parent} ({exc.strerror}); non-root hook runs cannot journal"
    try:
        why = parent_problem(os.lstat(parent))
    except OSError as exc:
        return f"cannot check {parent} ({exc.strerror})"
    return f"{parent} {why}; its per-uid spools are not shipped. Remove it and restart the agent" if why else None


def is_spool_name(name):
    return name.isdigit() and name == str(int(name))


def user_spools(journal_dir):
    """(trusted, refused) per-uid spools under ``<journal_dir>.users``.

    trusted: [(path, uid, (st_dev, st_ino))]; refused: [(path, why)].  Names
    that are not a uid (set-aside ``<uid>.untrusted...``) are skipped.  A
    parent that is unsafe refuses everything under it."""
    parent = users_dir(journal_dir)
    try:
        pst = os.lstat(parent)
    except FileNotFoundError:
        return [], []
    why = parent_problem(pst)
    if why:
        return [], [(parent, why)]
    trusted, refused = [], []
    try:
        names = sorted(os.listdir(parent))
    except OSError as exc:
        return [], [(parent, f"cannot be listed ({exc.strerror})")]
    for name in names:
        if not is_spool_name(name):
            continue
        path = os.path.join(parent, name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        why = spool_problem(name, st)
        if why:
            refused.append((path, why))
        else:
            trusted.append((path, st.st_uid, (st.st_dev, st.st_ino)))
    return trusted, refused


def same_spool(path, ident):
    """Is ``path`` still the directory the agent checked (not swapped for a
    symlink or another directory since)?"""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and (st.st_dev, st.st_ino) == ident
