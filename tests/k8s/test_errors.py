"""API failures become conditions: a 4xx is Stalled with the server's own words, the rest retries."""
import json

from kubernetes.client.exceptions import ApiException

from trtop.k8s.errors import from_api_exception, from_transport_error


def api_error(status: int, body: object) -> ApiException:
    e = ApiException(status=status, reason="Unprocessable Entity")
    e.body = json.dumps(body) if not isinstance(body, str) else body
    return e


def test_a_422_is_stalled_with_the_servers_message_and_causes():
    body = {"kind": "Status", "message": 'Deployment.apps "r" is invalid: spec.template.metadata.annotations',
            "details": {"causes": [{"field": "metadata.annotations", "message": "name part must consist of ..."}]}}
    f = from_api_exception(api_error(422, body), "applying Deployment ml/r")
    assert f.stalled and f.reason == "ApplyRejected"
    assert "applying Deployment ml/r" in f.message and "is invalid" in f.message and "name part must" in f.message


def test_conflicts_throttling_and_server_errors_are_retried():
    for status in (409, 429, 500, 503):
        assert not from_api_exception(api_error(status, {"message": "x"}), "x").stalled
    assert not from_transport_error(TimeoutError("read timed out"), "listing").stalled


def test_a_body_that_is_not_json_is_still_quoted():
    f = from_api_exception(api_error(403, "<html>forbidden</html>"), "creating Job j")
    assert f.stalled and "forbidden" in f.message
