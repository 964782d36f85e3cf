from tests.fixtures.factories import lead


def test_create_then_list(client, tenant):
    r = client.post(
        "/api/agents/crm/leads", json=lead(contact_phone="(206) 555-0199"), headers=tenant.headers
    )
    assert r.status_code == 201, r.text
    assert r.json()["lead"]["contact_phone"] == "+12065550199"
    r = client.get("/api/agents/crm/leads", params={"search": "206.555.0199"}, headers=tenant.headers)
    assert r.status_code == 200
    assert r.json()["total"] == 1
