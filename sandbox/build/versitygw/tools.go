//go:build tools

// Package tools pins the S3-compatible object store the sandbox runs (versitygw over a
// directory): a real server speaking the S3 API, for the embedded MLflow server's artifacts.
package tools

import _ "github.com/versity/versitygw/cmd/versitygw"
