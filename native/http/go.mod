module github.com/trtop/trtop/native/http

go 1.24
