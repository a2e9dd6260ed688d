// An independent verifier of a C2SP tlog-tiles log, built on Go's golang.org/x/mod/sumdb/note
// and sumdb/tlog (Debian's golang-golang-x-mod-dev), for the tests: ledgerflow wrote none of
// the code that checks it.
//
//	verifier URL VERIFIER_KEY [OLD_SIZE OLD_ROOT_BASE64]
//
// Fetches URL/checkpoint and verifies its signed note with the key; then, for every entry,
// fetches its entry bundle and an inclusion proof built from hash tiles (each tile checked
// against the signed root), and checks it; with OLD_SIZE and OLD_ROOT, a consistency proof
// from that tree too. Prints "OK size=N root=B64 entries=N" or "FAIL: why" (exit 1).
package main

import (
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

const height = 8

func fail(format string, args ...any) {
	fmt.Printf("FAIL: "+format+"\n", args...)
	os.Exit(1)
}

func fetch(url string) []byte {
	resp, err := http.Get(url)
	if err != nil {
		fail("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		fail("GET %s: status %d %v", url, resp.StatusCode, err)
	}
	return body
}

// tiles reads hash tiles at the C2SP paths: Go names them tile/8/L/N, C2SP tile/L/N.
type tiles struct{ base string }

func (t tiles) Height() int { return height }

func (t tiles) ReadTiles(list []tlog.Tile) ([][]byte, error) {
	out := make([][]byte, len(list))
	for i, tile := range list {
		path := strings.Replace(tile.Path(), fmt.Sprintf("tile/%d/", height), "tile/", 1)
		out[i] = fetch(t.base + "/" + path)
	}
	return out, nil
}

func (t tiles) SaveTiles([]tlog.Tile, [][]byte) {}

func entries(base string, size int64) [][]byte {
	var all [][]byte
	for start := int64(0); start < size; start += 1 << height {
		width := size - start
		tile := tlog.Tile{H: height, L: 0, N: start >> height, W: 1 << height}
		if width < 1<<height {
			tile.W = int(width)
		}
		path := strings.Replace(tile.Path(), fmt.Sprintf("tile/%d/0/", height), "tile/entries/", 1)
		data := fetch(base + "/" + path)
		for len(data) > 0 {
			n := int(binary.BigEndian.Uint16(data))
			all = append(all, data[2:2+n])
			data = data[2+n:]
		}
	}
	return all
}

func main() {
	if len(os.Args) != 3 && len(os.Args) != 5 {
		fail("usage: verifier URL VERIFIER_KEY [OLD_SIZE OLD_ROOT_BASE64]")
	}
	base, key := strings.TrimRight(os.Args[1], "/"), os.Args[2]
	verifier, err := note.NewVerifier(key)
	if err != nil {
		fail("verifier key: %v", err)
	}
	signed, err := note.Open(fetch(base+"/checkpoint"), note.VerifierList(verifier))
	if err != nil {
		fail("checkpoint note: %v", err)
	}
	lines := strings.Split(signed.Text, "\n")
	if len(lines) < 4 {
		fail("checkpoint body: %q", signed.Text)
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil {
		fail("checkpoint size: %v", err)
	}
	root, err := tlog.ParseHash(lines[2])
	if err != nil {
		fail("checkpoint root: %v", err)
	}
	tree := tlog.Tree{N: size, Hash: root}
	reader := tlog.TileHashReader(tree, tiles{base})
	all := entries(base, size)
	if int64(len(all)) != size {
		fail("%d entries served for a tree of %d", len(all), size)
	}
	for index, entry := range all {
		proof, err := tlog.ProveRecord(size, int64(index), reader)
		if err != nil {
			fail("proof of entry %d: %v", index, err)
		}
		if err := tlog.CheckRecord(proof, size, root, int64(index), tlog.RecordHash(entry)); err != nil {
			fail("entry %d is not in the signed tree: %v", index, err)
		}
	}
	if len(os.Args) == 5 {
		oldSize, err := strconv.ParseInt(os.Args[3], 10, 64)
		if err != nil {
			fail("old size: %v", err)
		}
		raw, err := base64.StdEncoding.DecodeString(os.Args[4])
		if err != nil || len(raw) != tlog.HashSize {
			fail("old root: %v", err)
		}
		var oldRoot tlog.Hash
		copy(oldRoot[:], raw)
		proof, err := tlog.ProveTree(size, oldSize, reader)
		if err != nil {
			fail("consistency proof from %d: %v", oldSize, err)
		}
		if err := tlog.CheckTree(proof, size, root, oldSize, oldRoot); err != nil {
			fail("the tree of %d does not extend the old tree of %d: %v", size, oldSize, err)
		}
	}
	fmt.Printf("OK size=%d root=%s entries=%d\n", size, lines[2], len(all))
}
