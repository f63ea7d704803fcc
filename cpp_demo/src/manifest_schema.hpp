// manifest.json against its JSON Schema, with valijson (library-internal; canvit_tests includes it too).
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>

namespace valijson {
class Schema;
}

namespace canvit {

// A JSON Schema (draft 2020-12, as pydantic writes it) compiled for valijson. Throws Error when the schema uses a
// keyword this validator cannot enforce (see schema_for_valijson).
class SchemaValidator {
   public:
    explicit SchemaValidator(nlohmann::json schema);
    ~SchemaValidator();
    // "" when `document` is valid, else its first error in one line: "<JSON pointer>: <what is wrong>", e.g.
    // "/inputs/0/role: 'foo' is not one of the allowed values (scene, state, ...)".
    std::string first_error(const nlohmann::json& document) const;

   private:
    nlohmann::json schema_, prepared_;  // as written (for error messages), as valijson reads it
    std::unique_ptr<valijson::Schema> compiled_;
};

// `schema` in the draft 7 that valijson 1.0 implements, enforcing what 2020-12 says (see manifest_schema.cpp). Throws
// Error naming a keyword it cannot enforce, so that a schema growing one fails loudly instead of validating less.
nlohmann::json schema_for_valijson(const nlohmann::json& schema);

// manifest.json's schema, version 1 (runtimes/canvit_runtime/manifest.schema.json, embedded at build time).
const SchemaValidator& manifest_schema();

// manifest.json text checked in order: JSON; format "canvit-export-manifest"; format_version (newer than 1: upgrade
// canvit_demo; any other: re-export); the JSON Schema. Returns the parsed manifest; throws Error, one line:
// "<source>: <what is wrong>; <the fix>".
nlohmann::json parse_manifest_json(const std::string& text, const std::string& source);

}  // namespace canvit
