// A real OpenID provider (panva's oidc-provider) for the portal's OIDC test, on loopback.
// argv: port client_id client_secret redirect_uri. Its development login page accepts any login
// name as the subject; the test submits it like a browser would.
import Provider from "oidc-provider";

const [port, clientId, clientSecret, redirectUri] = process.argv.slice(2);
const provider = new Provider(`http://127.0.0.1:${port}`, {
  clients: [
    {
      client_id: clientId,
      client_secret: clientSecret,
      redirect_uris: [redirectUri],
      grant_types: ["authorization_code"],
      response_types: ["code"],
    },
  ],
  claims: { openid: ["sub"], email: ["email"] },
  conformIdTokenClaims: false, // the id_token carries the email too: no userinfo call needed
  findAccount: async (ctx, id) => ({
    accountId: id,
    claims: async () => ({ sub: id, email: `${id}@example.com` }),
  }),
  cookies: { keys: ["waypost-test-only-cookie-key"] },
});
provider.on("server_error", (ctx, error) => console.error("server_error", error));
provider.listen(Number(port), "127.0.0.1", () => console.log(`oidc-provider listening on ${port}`));
