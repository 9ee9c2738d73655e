"""A token's text is checked before any lookup (pure): empty, another scheme's, the wrong length or characters are
refused saying what a Tuneboard token looks like."""
import secrets

from dashboard.tokens.services import TOKEN_PREFIX, token_text_error


def test_a_made_token_has_the_shape_and_others_are_refused_saying_why():
    for _ in range(50):
        assert token_text_error(TOKEN_PREFIX + secrets.token_urlsafe(32)) is None
    assert "no token" in token_text_error("")
    assert "starts with 'tb_'" in token_text_error("ghp_" + "a" * 40)
    assert "46 expected" in token_text_error("tb_" + "a" * 42)
    assert "46 expected" in token_text_error("tb_" + "a" * 44)
    assert "letters, digits, '-' or '_'" in token_text_error("tb_" + "a" * 42 + "=")
