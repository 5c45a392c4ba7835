package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"time"
)

// apiGet asks the daemon serving on socket for path. It returns ok=false,
// with no error, when no daemon answers there or the one that does serves
// another pin dir than pinDir: the caller then reads the pins itself. The
// caller closes the body.
func apiGet(socket, path, pinDir string) (body io.ReadCloser, ok bool, err error) {
	if socket == "" {
		return nil, false, nil
	}
	client := &http.Client{
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", socket)
			},
		},
		Timeout: 5 * time.Minute, // a listing of millions of rows streams for a while
	}
	resp, err := client.Get("http://sockaccel" + path)
	if err != nil {
		// Nobody listening (or not allowed to connect): the pins still
		// tell everything.
		return nil, false, nil
	}
	if resp.Header.Get(pinDirHeader) == "" || filepath.Clean(resp.Header.Get(pinDirHeader)) != filepath.Clean(pinDir) {
		resp.Body.Close()
		return nil, false, nil
	}
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		return nil, false, fmt.Errorf("daemon on %s: GET %s: %s: %s", socket, path, resp.Status, msg)
	}
	return resp.Body, true, nil
}
