package overlay

import "golang.org/x/sys/unix"

// RealID returns the device and inode number of the real object that
// holds n's metadata: the upper object, the index entry of an indexed
// hard link, or the topmost lower one. Names with one RealID are hard
// links of one object, as the kernel's overlayfs shows them: the names of
// a lower hard link until one is copied up without an index, the names of
// an upper one, the names that share an index entry. A layer tool that
// rebuilds a view (merge) groups links by it, where Ino may be shared by
// objects that are not one (see ino.go).
func (n *Node) RealID() (dev, ino uint64, err error) {
	fd, done, err := n.real()
	if err != nil {
		return 0, 0, err
	}
	defer done()
	var st unix.Stat_t
	if err := unix.Fstatat(fd, "", &st, unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return 0, 0, err
	}
	return st.Dev, st.Ino, nil
}

// Config returns the configuration the overlay was made with.
func (o *Overlay) Config() Config { return o.cfg }
