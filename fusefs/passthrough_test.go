package fusefs

import (
	"testing"

	"github.com/hanwen/go-fuse/v2/fs"
)

// ovl registers backing files itself: a handle that offered go-fuse's
// bridge a passthrough fd would be given the inode's first backing on
// every later open, a writable one included (docs/passthrough.md).
func TestFileOffersNoPassthroughFd(t *testing.T) {
	if _, ok := any(&file{}).(fs.FilePassthroughFder); ok {
		t.Fatal("*file implements fs.FilePassthroughFder")
	}
}
