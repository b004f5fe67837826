// Command loadgen is the router overhead bench's HTTP/1.1 load generator: keep-alive
// connections, each posting the same body back to back and reading the whole response
// (chunked or sized). Written in Go so that the client costs little CPU beside the
// processes it measures on a 2-core machine (bench/router_overhead.py runs it).
//
//	loadgen -port P -conns C -requests N        latencies (s) of N requests, JSON list
//	loadgen -port P -conns C -seconds S         completed requests per second, JSON number
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

type conn struct {
	c   net.Conn
	r   *bufio.Reader
	req []byte
}

func dial(port int, req []byte) (*conn, error) {
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return nil, err
	}
	return &conn{c: c, r: bufio.NewReaderSize(c, 64<<10), req: req}, nil
}

// post sends the request and reads the whole response.
func (k *conn) post() error {
	if _, err := k.c.Write(k.req); err != nil {
		return err
	}
	status, err := k.r.ReadSlice('\n')
	if err != nil {
		return err
	}
	if !bytes.HasPrefix(status, []byte("HTTP/1.1 200")) {
		return fmt.Errorf("status %q", bytes.TrimSpace(status))
	}
	chunked, length := false, -1
	for {
		line, err := k.r.ReadSlice('\n')
		if err != nil {
			return err
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 {
			break
		}
		i := bytes.IndexByte(line, ':')
		if i < 0 {
			continue
		}
		name, value := bytes.ToLower(line[:i]), bytes.TrimSpace(line[i+1:])
		switch string(name) {
		case "transfer-encoding":
			chunked = bytes.EqualFold(value, []byte("chunked"))
		case "content-length":
			if length, err = strconv.Atoi(string(value)); err != nil {
				return err
			}
		}
	}
	if !chunked {
		if length < 0 {
			return fmt.Errorf("neither chunked nor sized")
		}
		_, err := k.r.Discard(length)
		return err
	}
	for {
		line, err := k.r.ReadSlice('\n')
		if err != nil {
			return err
		}
		size, err := strconv.ParseInt(string(bytes.TrimRight(line, "\r\n")), 16, 64)
		if err != nil {
			return err
		}
		if _, err := k.r.Discard(int(size) + 2); err != nil {
			return err
		}
		if size == 0 {
			return nil
		}
	}
}

func main() {
	port := flag.Int("port", 0, "server port on 127.0.0.1")
	conns := flag.Int("conns", 1, "concurrent keep-alive connections (streams)")
	requests := flag.Int("requests", 0, "latency mode: requests in all")
	seconds := flag.Float64("seconds", 0, "throughput mode: run this long")
	path := flag.String("path", "/v1/chat/completions", "")
	bodyFile := flag.String("body", "", "request body (JSON file)")
	flag.Parse()
	body, err := os.ReadFile(*bodyFile)
	if err != nil {
		fail(err)
	}
	req := append([]byte(fmt.Sprintf("POST %s HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"+
		"content-length: %d\r\n\r\n", *path, len(body))), body...)
	cs := make([]*conn, *conns)
	for i := range cs {
		if cs[i], err = dial(*port, req); err != nil {
			fail(err)
		}
	}
	var wg sync.WaitGroup
	errs := &atomic.Value{}
	if *seconds > 0 {
		var done atomic.Int64
		end := time.Now().Add(time.Duration(*seconds * float64(time.Second)))
		t0 := time.Now()
		for _, c := range cs {
			wg.Add(1)
			go func(c *conn) {
				defer wg.Done()
				for time.Now().Before(end) {
					if err := c.post(); err != nil {
						errs.Store(err)
						return
					}
					done.Add(1)
				}
			}(c)
		}
		wg.Wait()
		check(errs)
		out(float64(done.Load()) / time.Since(t0).Seconds())
		return
	}
	per := max(1, *requests / *conns)
	lat := make([][]float64, *conns)
	for i, c := range cs {
		wg.Add(1)
		go func(i int, c *conn) {
			defer wg.Done()
			l := make([]float64, 0, per)
			for range per {
				t0 := time.Now()
				if err := c.post(); err != nil {
					errs.Store(err)
					return
				}
				l = append(l, time.Since(t0).Seconds())
			}
			lat[i] = l
		}(i, c)
	}
	wg.Wait()
	check(errs)
	all := []float64{}
	for _, l := range lat {
		all = append(all, l...)
	}
	out(all)
}

func check(errs *atomic.Value) {
	if err, ok := errs.Load().(error); ok {
		fail(err)
	}
}

func out(v any) {
	if err := json.NewEncoder(os.Stdout).Encode(v); err != nil {
		fail(err)
	}
}

func fail(err error) {
	if err != io.EOF {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
	} else {
		fmt.Fprintln(os.Stderr, "loadgen: connection closed")
	}
	os.Exit(1)
}
