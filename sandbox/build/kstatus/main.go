// kstatus prints how the kstatus library (sigs.k8s.io/cli-utils, what Flux and kpt read)
// sees each object given on stdin as a JSON list: one line of JSON per object, with its
// status (InProgress, Current, Failed, Terminating, NotFound, Unknown) and message.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type verdict struct {
	Name    string `json:"name"`
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	// Numbers as the API machinery reads them (int64, not float64).
	var objects []map[string]interface{}
	raw, err := io.ReadAll(os.Stdin)
	if err == nil {
		err = utiljson.Unmarshal(raw, &objects)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "kstatus: reading a JSON list of objects from stdin: %v\n", err)
		os.Exit(2)
	}
	encoder := json.NewEncoder(os.Stdout)
	for _, object := range objects {
		u := &unstructured.Unstructured{Object: object}
		result, err := status.Compute(u)
		if err != nil {
			fmt.Fprintf(os.Stderr, "kstatus: %s: %v\n", u.GetName(), err)
			os.Exit(1)
		}
		if err := encoder.Encode(verdict{Name: u.GetName(), Status: result.Status.String(), Message: result.Message}); err != nil {
			os.Exit(1)
		}
	}
}
