// Command main is the test suite's stand-in for iam-authz-server and iam-pump.
//
// As iam-authz-server, it encodes AnalyticsRecord values with
// github.com/vmihailenco/msgpack/v5 (msgpack.Marshal of the Go struct, as
// iam does) and RPUSHes them onto a Redis list over a plain RESP
// connection. As iam-pump, it decodes each encoded record back into the
// struct (msgpack.Unmarshal, as iam-pump does) and writes, one JSON line per
// record, what iam-pump's outputs would make of it: the struct as
// encoding/json marshals it, as gopkg.in/mgo.v2/bson marshals it for
// MongoDB, and as its csv pump writes its row. A last line counts the
// records iam's username filters keep.
//
// Built by tests/_iam.py (the iam_peer fixture) in GOPATH mode from Debian's packages
// (golang-go, golang-github-vmihailenco-msgpack.v5-dev,
// golang-gopkg-mgo.v2-dev); no module proxy is needed.
package main

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/csv"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand"
	"net"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/vmihailenco/msgpack/v5"
	"gopkg.in/mgo.v2/bson"
)

// AnalyticsRecord has the fields, types and tags of iam's record.
type AnalyticsRecord struct {
	TimeStamp  int64     `json:"timestamp"`
	Username   string    `json:"username"`
	Effect     string    `json:"effect"`
	Conclusion string    `json:"conclusion"`
	Request    string    `json:"request"`
	Policies   string    `json:"policies"`
	Deciders   string    `json:"deciders"`
	ExpireAt   time.Time `json:"expireAt"   bson:"expireAt"`
}

var users = []string{"alice", "bob", "carol", "张三", "李四", "Zoë", "dave", "", "Ωmega 🚀"}
var conclusions = []string{"", "policies matched", "no policy allows it", "名字, with \"quotes\"",
	" leading space", "line\nbreak", `\.`, "tab\tinside"}

func record(rng *rand.Rand, i int, now time.Time) AnalyticsRecord {
	req := map[string]interface{}{
		"subject": "users:" + users[rng.Intn(len(users))], "action": "delete",
		"resource": fmt.Sprintf("resources:articles:%d", i),
		"context": map[string]string{"remoteIP": "192.0.2.1", "note": "ünïcødé"},
	}
	if i%50 == 7 {
		req["padding"] = strings.Repeat("long request ", 1500)
	}
	reqJSON, _ := json.Marshal(req)
	r := AnalyticsRecord{
		TimeStamp:  now.Unix() - int64(rng.Intn(3600)),
		Username:   users[rng.Intn(len(users))],
		Effect:     []string{"allow", "deny"}[rng.Intn(2)],
		Conclusion: conclusions[rng.Intn(len(conclusions))],
		Request:    string(reqJSON),
		Policies:   fmt.Sprintf(`[{"name":"policy-%d","effect":"allow"}]`, rng.Intn(10)),
		Deciders:   fmt.Sprintf("policy-%d", rng.Intn(10)),
		ExpireAt:   now.Add(24 * 365 * 100 * time.Hour), // iam's SetExpiry(0)
	}
	switch {
	case i%10 == 3:
		r.ExpireAt = time.Time{} // never set: the 96-bit form of year 1
	case i%13 == 5:
		r.ExpireAt = time.Unix(1700000000, 0) // whole seconds: the 32-bit form
	case i%17 == 9:
		r.ExpireAt = time.Unix(-1, 5) // before 1970
	}
	if i%97 == 11 {
		r = AnalyticsRecord{} // every field its zero value
	}
	if i%31 == 2 {
		r.Policies, r.Deciders = "", ""
	}
	return r
}

// lineValues is what iam-pump's csv pump writes for a record's fields.
func lineValues(r *AnalyticsRecord) []string {
	v := reflect.ValueOf(r).Elem()
	out := make([]string, 0, v.NumField())
	for i := 0; i < v.NumField(); i++ {
		f := v.Field(i)
		switch x := f.Interface().(type) {
		case int64:
			out = append(out, strconv.FormatInt(x, 10))
		case time.Time:
			out = append(out, x.String())
		default:
			out = append(out, f.String())
		}
	}
	return out
}

func fieldNames() []string {
	t := reflect.TypeOf(AnalyticsRecord{})
	names := make([]string, t.NumField())
	for i := range names {
		names[i] = t.Field(i).Name
	}
	return names
}

func csvLine(cells []string) string {
	var buf bytes.Buffer
	w := csv.NewWriter(&buf)
	_ = w.Write(cells)
	w.Flush()
	return buf.String()
}

func rpush(conn net.Conn, rd *bufio.Reader, key string, values [][]byte) error {
	var b bytes.Buffer
	fmt.Fprintf(&b, "*%d\r\n$5\r\nRPUSH\r\n$%d\r\n%s\r\n", len(values)+2, len(key), key)
	for _, v := range values {
		fmt.Fprintf(&b, "$%d\r\n", len(v))
		b.Write(v)
		b.WriteString("\r\n")
	}
	if _, err := conn.Write(b.Bytes()); err != nil {
		return err
	}
	reply, err := rd.ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(reply, ":") {
		return fmt.Errorf("RPUSH: %q", reply)
	}
	return nil
}

func main() {
	n := flag.Int("n", 1000, "records")
	seed := flag.Int64("seed", 1, "random seed")
	addr := flag.String("redis", "", "redis host:port to RPUSH onto (empty: none)")
	password := flag.String("password", "", "redis password")
	key := flag.String("key", "analytics-iam-system-analytics", "the list")
	refPath := flag.String("reference", "", "write what iam-pump stores here")
	keep := flag.String("usernames", "alice,张三", "a usernames filter to count")
	skip := flag.String("skip", "bob,carol", "a skip_usernames filter to count")
	csvName := flag.Int64("csv-name", 0, "print iam-pump's csv file name for this Unix time")
	flag.Parse()
	if *csvName != 0 {
		t := time.Unix(*csvName, 0).UTC()
		fmt.Printf("%d-%s-%d-%d.csv\n", t.Year(), t.Month(), t.Day(), t.Hour())
		return
	}

	rng := rand.New(rand.NewSource(*seed))
	now := time.Now()
	encoded := make([][]byte, *n)
	for i := range encoded {
		r := record(rng, i, now)
		b, err := msgpack.Marshal(&r)
		if err != nil {
			panic(err)
		}
		encoded[i] = b
	}

	if *refPath != "" {
		f, err := os.Create(*refPath)
		if err != nil {
			panic(err)
		}
		out := json.NewEncoder(f)
		_ = out.Encode(map[string]string{"csv_header": csvLine(fieldNames())})
		inSet := func(list string, s string) bool {
			for _, x := range strings.Split(list, ",") {
				if x == s {
					return true
				}
			}
			return false
		}
		kept, notSkipped := 0, 0
		for _, b := range encoded {
			var d AnalyticsRecord
			if err := msgpack.Unmarshal(b, &d); err != nil {
				panic(err)
			}
			js, _ := json.Marshal(d)
			bs, err := bson.Marshal(d)
			if err != nil {
				panic(err)
			}
			_ = out.Encode(map[string]interface{}{
				"json": json.RawMessage(js), "bson": base64.StdEncoding.EncodeToString(bs),
				"csv": csvLine(lineValues(&d)), "msgpack": base64.StdEncoding.EncodeToString(b),
			})
			if inSet(*keep, d.Username) {
				kept++
			}
			if !inSet(*skip, d.Username) {
				notSkipped++
			}
		}
		_ = out.Encode(map[string]int{"usernames_kept": kept, "skip_usernames_kept": notSkipped})
		if err := f.Close(); err != nil {
			panic(err)
		}
	}

	if *addr != "" {
		conn, err := net.Dial("tcp", *addr)
		if err != nil {
			panic(err)
		}
		rd := bufio.NewReader(conn)
		if *password != "" {
			fmt.Fprintf(conn, "*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n", len(*password), *password)
			if reply, _ := rd.ReadString('\n'); !strings.HasPrefix(reply, "+OK") {
				panic("AUTH: " + reply)
			}
		}
		for start := 0; start < len(encoded); start += 100 {
			end := start + 100
			if end > len(encoded) {
				end = len(encoded)
			}
			if err := rpush(conn, rd, *key, encoded[start:end]); err != nil {
				panic(err)
			}
		}
		conn.Close()
	}
}
