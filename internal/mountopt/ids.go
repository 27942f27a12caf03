package mountopt

import "github.com/ovl-project/ovl/idmap"

// idState gathers fuse-overlayfs's ID options. Later options win, as for
// every option; squash_to_uid= and squash_to_gid= take precedence over
// squash_to_root whatever their order (fuse-overlayfs: find_mapping).
type idState struct {
	uids, gids []idmap.Range
	root       bool
	uid, gid   *uint32
}

func (s *idState) ranges(dst *[]idmap.Range, v string) error {
	rs, err := idmap.ParseRanges(v)
	if err != nil {
		return err
	}
	*dst = rs
	return nil
}

func (s *idState) squash(dst **uint32, v string) error {
	id, err := idmap.ParseID(v)
	if err != nil {
		return err
	}
	*dst = &id
	return nil
}

// result is the mapping asked for, nil for none.
func (s *idState) result() *idmap.Map {
	if len(s.uids) == 0 && len(s.gids) == 0 && !s.root && s.uid == nil && s.gid == nil {
		return nil
	}
	m := &idmap.Map{UIDs: s.uids, GIDs: s.gids, SquashUID: s.uid, SquashGID: s.gid}
	if s.root {
		zero := uint32(0)
		if m.SquashUID == nil {
			m.SquashUID = &zero
		}
		if m.SquashGID == nil {
			m.SquashGID = &zero
		}
	}
	m.OverflowUID, m.OverflowGID = idmap.SystemOverflow()
	return m
}
